//! This crate's `tracing` events, as the tests see them: the fields of
//! every event at one level logged on one thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// An event's fields, by name, as text.
pub type Fields = BTreeMap<&'static str, String>;

/// Keeps the fields of every event of this crate at `level` logged on the
/// thread that installed it.
#[derive(Clone)]
pub struct Events {
    seen: Arc<Mutex<Vec<Fields>>>,
    level: Level,
    thread: std::thread::ThreadId,
}

impl Events {
    /// Installs the capture as the global subscriber. Global, because a
    /// thread's own subscriber misses events whose call site another test's
    /// thread saw first with none; it keeps this thread's events only.
    pub fn install(level: Level) -> Self {
        let events = Self {
            seen: Arc::default(),
            level,
            thread: std::thread::current().id(),
        };
        tracing::subscriber::set_global_default(events.clone()).unwrap();
        events
    }

    /// The events seen so far, oldest first.
    pub fn seen(&self) -> Vec<Fields> {
        self.seen.lock().unwrap().clone()
    }
}

struct Collect(Fields);

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

impl Subscriber for Events {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if *meta.level() == self.level
            && meta.target().starts_with("tower_ratelimit")
            && std::thread::current().id() == self.thread
        {
            let mut c = Collect(Fields::new());
            event.record(&mut c);
            self.seen.lock().unwrap().push(c.0);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
