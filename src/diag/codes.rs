//! Stable diagnostic codes. A code never changes meaning once released; new problems get new
//! codes. `K0xx`: the input could not be read as YAML at all (exit status 2). `K1xx`: the
//! document does not match the schema. `K2xx`: the values are individually valid but do not fit
//! together.

use std::fmt;

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal,)*) => {
        /// A stable diagnostic code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $($(#[doc = $doc])* $name,)*
        }

        impl Code {
            /// The code as printed, e.g. `K101`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $code,)*
                }
            }

            /// Every code, in order.
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            /// One line describing the code (its doc comment).
            pub fn summary(self) -> &'static str {
                match self {
                    $(Code::$name => concat!($($doc),*).trim_ascii(),)*
                }
            }
        }
    };
}

codes! {
    /// A file could not be read.
    Io = "K001",
    /// The file is not valid UTF-8 text.
    NotUtf8 = "K002",
    /// The text is not valid YAML.
    YamlSyntax = "K003",
    /// The document is too large or too deeply nested (e.g. an alias bomb).
    TooLarge = "K004",
    /// The file holds more than one YAML document.
    MultipleDocuments = "K005",
    /// The document is empty.
    Empty = "K100",
    /// A key that the schema does not know.
    UnknownKey = "K101",
    /// A value of the wrong type.
    WrongType = "K102",
    /// A number outside its allowed range.
    OutOfRange = "K103",
    /// A value that is not one of the allowed choices.
    UnknownValue = "K104",
    /// A required key is missing.
    MissingKey = "K105",
    /// An unknown `type` (or `kind`) of a tagged section.
    UnknownVariant = "K106",
    /// The same key appears twice in one mapping.
    DuplicateKey = "K107",
    /// A `$name` reference to a variable that is not defined.
    UndefinedVariable = "K108",
    /// A `--set key.path=value` override that cannot be applied.
    BadOverride = "K109",
    /// The model file named by a recipe cannot be used.
    BadModelFile = "K110",
    /// A string that does not have the required form.
    BadString = "K111",
    /// A list with too few or too many items.
    BadLength = "K112",
    /// A mapping key that is not a plain string.
    BadKey = "K113",
    /// Values that are valid one by one but contradict each other.
    Conflict = "K200",
    /// A layer does not fit the shape of its input (widths, heads, lengths).
    Shape = "K300",
    /// The model lets a position see later positions, but the task predicts the next token.
    NonCausal = "K301",
    /// A layer is used where it has no meaning (e.g. `cycle` outside `repeat`).
    Structure = "K302",
}

impl Code {
    /// `true` when the input could not be read as YAML at all (exit status 2).
    pub fn is_unreadable(self) -> bool {
        self.as_str().starts_with("K0")
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
