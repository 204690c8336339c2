"""Router training (rules/train.smk: router_samples, train_routers): training samples from the search, the
feature cache, the training loop and its settings, the trained directory's model card and figures."""
