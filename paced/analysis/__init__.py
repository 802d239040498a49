"""Analysis: reading what training did, from gradients or from results on disk; no training loop here.

    snr.py          the cross-problem gradient SNR per p̂ bin, and ``paced snr``
    compression.py  a pass@1 gain split into compression and capability gain, ``paced analyze``
    plots.py        the pictures (pass@k curves, the gain split, the SNR per bin); matplotlib optional
"""
