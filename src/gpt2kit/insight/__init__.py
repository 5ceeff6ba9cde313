"""Look inside the model: what it would say next, how surprised it is by a text, whether a text is its own,
and where it attends. Every function returns data (dataclasses, tensors); the CLI and the playground render.

    next_token.next_tokens     the most likely next tokens, and what a sampler keeps of them
    surprisal.score_text       per-token log-probability, rank and alternatives (eval's windows)
    detect.detect_text         Fast-DetectGPT's criterion, GLTR's statistics, a calibrated verdict
    html.render_html           a self-contained page of a text's surprisal
"""
