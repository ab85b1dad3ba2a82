"""The science: models (:mod:`.models`), data and tasks (:mod:`.data`), what a model
predicts and how it is scored (:mod:`.objectives`, :mod:`.metrics`), inference
(:mod:`.inference`, :mod:`.batch_predict`, :mod:`.baseline`) and training
(:mod:`.train`), with what they share (:mod:`.config`, :mod:`.checkpoint`,
:mod:`.parallel`, :mod:`.plots`, :mod:`.run_record`).

Inside this folder the layers run models < data < shared < inference < training
(``tests/test_layers.py``); it imports the core and the layer, never the studies or
the command line.
"""
