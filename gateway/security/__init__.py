"""Who may subscribe and publish: JWT, API keys and public channels, and the minting of tokens."""
