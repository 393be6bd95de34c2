"""The paper's reference code (github rsshyam/MT-GRPO; docs/fidelity.md): `scoring` its IWU variant as a rule of
its own (`ReferenceIWURule`, "iwu-ref"), `presets` the methods that run its scripts by name."""
