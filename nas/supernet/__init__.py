"""The weight-sharing supernet: the network, its sandwich training, its evaluator."""
