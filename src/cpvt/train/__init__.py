"""The training wing: configuration and recipes, the engine (train, evaluate), batched augmentation,
distributed set-up, run locks and the allocator setting. Imports only the core (and ``cpvt.utils``)."""
