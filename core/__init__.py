"""Poison Lab core: every computation behind the app and the CLI.

Plain Python and torch; never imports streamlit. Each pipeline step is a pure
function of a small frozen config and its upstream artifacts, cached on disk.
"""
