"""Experiments that test the method's claims on the real loop (`train.train`), each a script:

    python -m experiments.credit     # process vs outcome vs mixed rewards (docs/credit.md)
"""
