"""Building the shipped model pair, offline: the generated arithmetic task, the
tokenizer and the two transformers models of ``configs/models/tiny-arith``,
trained on the CPU and checked (accuracy, greedy acceptance, losslessness)
before they are written.  A development tool run from a checkout
(``python -m training.tiny_pair``); it uses the agents' backend, speculation
and the validation scoring, and nothing at run time imports it, so it is not
part of the installed package.
"""
