//! Hugging Face hub resolution (to be written)
