//! The Hugging Face tokenizer, and streaming detokenisation that never splits a character.

use crate::error::{Error, Result};

/// A `tokenizer.json` tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        // tokenizers 0.22 panics (`expect("Helper")` in its decoder deserializer) when the
        // `decoder` field does not parse as a JSON value (bad syntax, an invalid \u escape)
        // instead of returning the error. Parsing that field first, with the same parser and
        // nesting limit, turns it into an error (found by fuzzing; docs/reliability.md). Only
        // full parsing checks escapes: serde_json skips them when ignoring a value.
        #[derive(serde::Deserialize)]
        struct DecoderProbe {
            #[serde(default)]
            #[allow(dead_code)]
            decoder: Option<serde_json::Value>,
        }
        serde_json::from_slice::<DecoderProbe>(bytes)
            .map_err(|e| Error::Tokenizer(format!("malformed tokenizer.json: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("malformed tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    /// Entries including added (special) tokens.
    pub fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }

    /// One past the largest id the tokenizer can produce (vocabulary and added tokens). Ids need
    /// not be dense, so this can exceed [`Tokenizer::vocab_size`].
    pub fn id_bound(&self) -> u64 {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&id| id as u64 + 1)
            .max()
            .unwrap_or(0)
    }

    /// A tokenizer that can produce ids the model has no embedding for is unusable. The largest
    /// id counts, not the number of entries: a vocabulary `{"a": 1000}` has one entry and yields
    /// id 1000 (found by fuzzing; docs/reliability.md).
    pub fn check_model_vocab(&self, model_vocab: u32) -> Result<()> {
        let n = self.vocab_size();
        if n > model_vocab {
            return Err(Error::Tokenizer(format!(
                "tokenizer.json has {n} tokens but the model's vocab_size is {model_vocab}"
            )));
        }
        let bound = self.id_bound();
        if bound > model_vocab as u64 {
            return Err(Error::Tokenizer(format!(
                "tokenizer.json has token id {} but the model's vocab_size is {model_vocab}",
                bound - 1
            )));
        }
        Ok(())
    }

    /// Token ids of `text`, after `bos` when the model has one. The tokenizer's own
    /// post-processor is not applied: the model config says what to prepend.
    pub fn encode(&self, text: &str, bos: Option<u32>) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(bos
            .into_iter()
            .chain(enc.get_ids().iter().copied())
            .collect())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// Text of `ids`, special tokens included (as Python's `skip_special_tokens=False`).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Turns a growing id sequence into text pieces.
///
/// Decoding single tokens is wrong twice over: byte-level tokens can end mid-character, and
/// some decoders treat the first token of a sequence specially (leading spaces). So each new
/// token is decoded together with a few tokens before it (`prefix`), and only the text beyond
/// the prefix's text is emitted, and only once it does not end in U+FFFD (an incomplete
/// character whose remaining bytes are still to come).
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

/// Tokens of left context kept when a stream starts after a prompt.
const CONTEXT_TOKENS: usize = 4;

impl StreamDecoder {
    /// A decoder whose output continues after `context` (e.g. the prompt), which is not emitted.
    pub fn new(context: &[u32]) -> Self {
        let keep = &context[context.len().saturating_sub(CONTEXT_TOKENS)..];
        Self {
            ids: keep.to_vec(),
            prefix: 0,
            read: keep.len(),
        }
    }

    /// Adds a token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        if now.ends_with('\u{FFFD}') || now.len() <= before.len() {
            return Ok(String::new());
        }
        // Decoders only append as tokens are added, so the new text starts where the old one
        // ended; `get` guards the rare decoder that rewrites its tail (it then waits a token).
        match now.get(before.len()..) {
            Some(new) => {
                let new = new.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(new)
            }
            None => Ok(String::new()),
        }
    }

    /// The text still held back (an incomplete character shows as U+FFFD), and resets the hold.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }
}
