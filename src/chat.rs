//! Conversations: a model's chat template rendered with a real Jinja engine (minijinja), and a
//! conversation that keeps its history in the KV cache, so that a new turn prefills only what the
//! cache does not already hold.
//!
//! When the history no longer fits the context (with room for the reply), the oldest turns are
//! dropped first; the system prompt is always kept.

use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Generation, TextModel};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source` (Jinja, as in Hugging Face `chat_template`s); `bos` and `eos` are the
    /// texts of those tokens, which templates may insert.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Model(format!("chat template: {e}")))?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ending where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Model(format!("chat template: {e}")))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| Error::Model(format!("chat template: {e}")))
    }
}

/// A conversation with one model: its messages and what of them the model's KV cache holds.
pub struct Conversation {
    template: ChatTemplate,
    system: Option<Message>,
    turns: Vec<Message>,
    /// Token ids the engine's cache holds, from position 0.
    cached: Vec<u32>,
}

impl Conversation {
    /// A conversation in `model`'s chat template (refused if the model has none), with an
    /// optional system prompt.
    pub fn new(model: &TextModel, system: Option<&str>) -> Result<Self> {
        let cfg = model.engine.config();
        let source = cfg.chat_template.as_deref().ok_or_else(|| {
            Error::Unsupported("this model has no chat template (a GGUF file carries one)".into())
        })?;
        let text = |id: Option<u32>| {
            id.and_then(|i| model.tokenizer.decode_with_special(&[i]).ok())
                .unwrap_or_default()
        };
        let template = ChatTemplate::new(source, &text(cfg.bos_token_id), &text(cfg.eos_token_id))?;
        Ok(Self {
            template,
            system: system.map(|s| Message::new("system", s)),
            turns: Vec::new(),
            cached: Vec::new(),
        })
    }

    /// The messages so far (the system prompt first, if any).
    pub fn messages(&self) -> Vec<Message> {
        self.system
            .iter()
            .cloned()
            .chain(self.turns.iter().cloned())
            .collect()
    }

    /// Adds the user's message and starts the reply. The cache keeps the longest prefix it shares
    /// with the new prompt; only the rest is prefilled. Give the reply's text and ids to
    /// [`Conversation::record_reply`] when it is done.
    pub fn reply<'m>(
        &mut self,
        model: &'m mut TextModel,
        user: &str,
        opts: GenerateOptions,
    ) -> Result<Generation<'m>> {
        self.turns.push(Message::new("user", user));
        self.respond(model, opts)
    }

    /// Replaces the conversation's messages with `messages` (a leading `system` message is the
    /// system prompt) and starts the assistant's reply to them. The KV cache is kept: the prompt
    /// the new messages render to shares its prefix with what the cache holds whenever the caller
    /// passes the history back with one new user message, as chat front ends do, so only that is
    /// prefilled. This is the stateless form the JS API uses (`engine.chat(messages)`).
    pub fn reply_to<'m>(
        &mut self,
        model: &'m mut TextModel,
        messages: &[Message],
        opts: GenerateOptions,
    ) -> Result<Generation<'m>> {
        let (system, turns) = match messages.split_first() {
            Some((first, rest)) if first.role == "system" => (Some(first.clone()), rest),
            _ => (None, messages),
        };
        if let Some(m) = turns
            .iter()
            .find(|m| m.role != "user" && m.role != "assistant")
        {
            return Err(Error::config(format!(
                "chat: a message's role must be system (first only), user or assistant (got {:?})",
                m.role
            )));
        }
        if turns.last().is_none_or(|m| m.role != "user") {
            return Err(Error::config(
                "chat: the last message must be the user's (the reply is the assistant's)",
            ));
        }
        self.system = system;
        self.turns = turns.to_vec();
        self.respond(model, opts)
    }

    /// The reply to the messages as they stand (the last one the user's).
    fn respond<'m>(
        &mut self,
        model: &'m mut TextModel,
        mut opts: GenerateOptions,
    ) -> Result<Generation<'m>> {
        let ids = self.fitted_prompt(model, opts.max_tokens)?;
        let shared = self
            .cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(model.engine.position() as usize)
            // At least one token is fed, so the reply starts from fresh logits.
            .min(ids.len() - 1);
        model.engine.truncate(shared as u32);
        self.cached = ids.clone();
        opts.keep_cache = true;
        let (engine, tokenizer) = (&mut model.engine, &model.tokenizer);
        Ok(Generation::new(
            engine,
            tokenizer,
            ids[shared..].to_vec(),
            opts,
        ))
    }

    /// Records the assistant's reply (`text`) after [`Conversation::reply`]; `cache_len` is the
    /// engine's position after the generation ended, `generated` the reply's ids.
    pub fn record_reply(&mut self, text: &str, generated: &[u32], cache_len: u32) {
        self.turns.push(Message::new("assistant", text));
        self.cached.extend_from_slice(generated);
        self.cached.truncate(cache_len as usize);
    }

    /// The prompt for the conversation, dropping the oldest turns until it leaves `reply_room`
    /// positions of the context free.
    fn fitted_prompt(&mut self, model: &TextModel, reply_room: usize) -> Result<Vec<u32>> {
        let context = model.engine.context() as usize;
        loop {
            let text = self.template.render(&self.messages(), true)?;
            let ids = model.tokenizer.encode(&text, None)?;
            if ids.len() + reply_room.min(context / 2) <= context {
                return Ok(ids);
            }
            if self.turns.len() <= 1 {
                return Err(Error::config(format!(
                    "the chat prompt is {} tokens, which with room for the reply does not fit the \
                     context of {context} positions (see --context)",
                    ids.len()
                )));
            }
            // The oldest exchange goes: a user turn and the reply after it.
            let drop = if self.turns.len() > 2 && self.turns[1].role == "assistant" {
                2
            } else {
                1
            };
            self.turns.drain(..drop);
        }
    }
}
