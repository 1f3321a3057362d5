"""Models built from the ``model`` config group, dlexp's own (mlp, cnn, torchvision backbones) or yours.

The contract a model class keeps (checked on the first batch before training by
:func:`dlexp.models.contract.check_model`; a break is one ``error: model: ...`` line naming the class):

- **Construction.** The ``model`` config's ``_target_`` (a class or a function, e.g. ``mynet.TinyNet``) is
  called by Hydra's ``instantiate`` with every other key of the ``model`` config as a keyword argument,
  plus two from the dataset: ``input_shape=`` (one row's shape as a tuple of ints: ``(n_features,)`` for
  tables and points, ``(3, height, width)`` for images) and ``num_classes=`` (an int >= 2). So
  ``model.width=32`` on the command line reaches ``__init__(self, input_shape, num_classes, width=16)``
  as ``width=32``; a key the class does not take is ``error: model: cannot build ...: unexpected keyword``.
  The target's module must be importable: dlexp adds the folder it is started in to ``sys.path``.
- **Parameters.** It is a ``torch.nn.Module`` with at least one trainable parameter (layers assigned as
  attributes, ``nn.Sequential`` or ``nn.ModuleList``); the optimizer gets ``model.parameters()``.
- **forward.** ``forward(x)`` takes a float32 batch ``(N, *input_shape)`` (images normalised, see the
  dataset's ``eval_transform``) and returns one float tensor of logits ``(N, num_classes)``, finite, no
  softmax applied (the loss config applies softmax/log_softmax where its criterion needs them).
- **Modes.** dlexp calls ``train()`` / ``eval()`` around training and evaluation, and saves
  ``state_dict()`` (``model.pt``); the same config rebuilds the class to load it (dlexp.models.saved).
"""
