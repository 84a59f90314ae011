"""Finding, decoding and transforming the user's images. No model code here."""
