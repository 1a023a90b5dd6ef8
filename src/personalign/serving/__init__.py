"""The OpenAI-compatible HTTP surface over the runtime's LLMs: request schemas and the input
policy, the error shape, the response and stream formats, and the bare model server. The
personalization service builds on it; the DSPy peers serve their models through it on
loopback."""
