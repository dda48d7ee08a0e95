//! SANA text side: tokenizer ids, prompt assembly and the Gemma-2 encoder against the sana-tiny goldens.
