"""The browser pages (index.html, demo/) that the gateway serves at /web/ and /demo/.

A Python package only so that the pages ship inside the wheel; there is no Python code here.
"""
