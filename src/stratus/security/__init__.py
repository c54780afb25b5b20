"""Who may do what: identities, API keys, JWT/OIDC, roles and the one rule that bounds them.

Nothing here imports the HTTP layer; the gateway calls these plain functions through its
hooks (api/auth.py). See docs/SECURITY.md for the model.
"""
