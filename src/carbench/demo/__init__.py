"""The browser demo of CaR (`python -m carbench.demo`, `make app`): see `app.py`."""
