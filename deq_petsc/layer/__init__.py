"""The layer: :class:`~deq_petsc.layer.deq.DEQ`, an ``nn.Module`` that solves forward
with the core's SNES and attaches the implicit gradient, and bridges to other DEQ
libraries (:mod:`.torchdeq`, an optional dependency imported only on use)."""
