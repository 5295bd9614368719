"""``lotus_pl demo``: a local Gradio page to try any model on photos and short videos (the ``demo`` extra)."""
