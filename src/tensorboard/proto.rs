//! The few TensorBoard protobuf messages kiln writes, as in TensorBoard's own
//! `tensorboard/compat/proto/{event,summary,tensor,tensor_shape}.proto` (field numbers checked
//! against the descriptors of the PyPI `tensorboard` package, 2.21).
//!
//! Only the fields kiln writes or reads back are declared; protobuf readers skip the others.

/// `tensorboard.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The training step (the x axis of TensorBoard's charts).
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// The `what` oneof of [`Event`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of a file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Summary values.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session boundary: `START` after a restart makes TensorBoard drop the events of
    /// later steps it had read (orphans of the run before it was resumed).
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorboard.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionStatus`: [`SESSION_START`] is the one kiln writes.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog.SessionStatus.START`.
pub const SESSION_START: i32 = 1;

/// `tensorboard.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// Its values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorboard.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The tag (`train/loss`): TensorBoard groups tags by what precedes the first `/`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Which plugin reads a tensor value.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The value (a oneof, so that a scalar 0.0 is still written).
    #[prost(oneof = "Kind", tags = "2, 8")]
    pub kind: Option<Kind>,
}

/// The `value` oneof of [`Value`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// A tensor (text: a string tensor).
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorboard.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorboard.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `text` for text summaries.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own data (the text plugin's `TextPluginData{version: 0}` is empty).
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorboard.TensorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`: [`DT_STRING`] for text.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape (no dimensions: a scalar).
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The strings of a string tensor.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `DataType.DT_STRING`.
pub const DT_STRING: i32 = 7;

/// `tensorboard.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The dimensions.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `tensorboard.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Its size.
    #[prost(int64, tag = "1")]
    pub size: i64,
}

impl Value {
    /// A scalar.
    pub fn scalar(tag: &str, v: f32) -> Self {
        Value {
            tag: tag.to_string(),
            metadata: None,
            kind: Some(Kind::SimpleValue(v)),
        }
    }

    /// A text summary: a scalar string tensor read by the text plugin (Markdown).
    pub fn text(tag: &str, markdown: &str) -> Self {
        Value {
            tag: tag.to_string(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                    content: Vec::new(),
                }),
            }),
            kind: Some(Kind::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto::default()),
                string_val: vec![markdown.as_bytes().to_vec()],
            })),
        }
    }

    /// The scalar, if it is one.
    pub fn as_scalar(&self) -> Option<f32> {
        match self.kind {
            Some(Kind::SimpleValue(v)) => Some(v),
            _ => None,
        }
    }

    /// The text of a text summary, if it is one.
    pub fn as_text(&self) -> Option<&str> {
        let plugin = self.metadata.as_ref()?.plugin_data.as_ref()?;
        match &self.kind {
            Some(Kind::Tensor(t)) if plugin.plugin_name == "text" && t.dtype == DT_STRING => {
                std::str::from_utf8(t.string_val.first()?).ok()
            }
            _ => None,
        }
    }
}
