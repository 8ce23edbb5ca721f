"""
Who may do what: identities from certificates, roles, and the policy file.
"""
