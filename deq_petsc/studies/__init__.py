"""Studies built on training and inference: the demo (:mod:`.demo`, :mod:`.demo_seeds`)
and the side-by-side solver comparison (:mod:`.compare`)."""
