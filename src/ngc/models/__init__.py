"""Model loading: packaged aliases, local folders, GGUF files, hub ids; tiny random models for tests."""
