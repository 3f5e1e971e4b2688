"""COMPARE: what a trained model costs to serve, set against what it cost to train.

In: a trained model (a checkpoint or an MLflow source) and a meter. Out: inference
tokens/Wh (`depth eval`), the amortized cost per served token and the break-even
(`depth amortize`), the physics reference points, and `depth report`.
"""
