"""Fidelity checks of CGGM's official variant against the released code (zrguo/CGGM@21e428c).

`released.py` runs the released training loop from *your* clone of that repository side by side with
cggmlib, from identical weights and batches (`python -m cggmlib.fidelity --released PATH`). The
project ships none of the released code; `weights.py` maps the released models' parameter names onto
ours. docs/methods.md ("Fidelity") gives the measured differences and the command.
"""
