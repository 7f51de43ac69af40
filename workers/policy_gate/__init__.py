"""policy_gate: decides whether a customer's modify request is allowed, by the business's rules."""
