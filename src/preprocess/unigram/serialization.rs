//! [`LeanUnigram`] from and to a `tokenizer.json` `"model"` section, in the layout of the
//! crate's `Unigram`; the pieces go straight into a [`Builder`] as they are parsed.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use super::{Builder, LeanUnigram};

impl Serialize for LeanUnigram {
    /// The crate's `Unigram` layout, so a saved tokenizer loads in either.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        struct Vocab<'a>(&'a LeanUnigram);
        impl Serialize for Vocab<'_> {
            fn serialize<S: Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for id in 0..self.0.len() as u32 {
                    let piece = String::from_utf8_lossy(self.0.piece(id));
                    seq.serialize_element(&(piece, self.0.scores[id as usize]))?;
                }
                seq.end()
            }
        }
        let mut model = serializer.serialize_struct("Unigram", 4)?;
        model.serialize_field("type", "Unigram")?;
        model.serialize_field("unk_id", &self.unk_id)?;
        model.serialize_field("vocab", &Vocab(self))?;
        model.serialize_field("byte_fallback", &self.byte_fallback)?;
        model.end()
    }
}

impl<'de> Deserialize<'de> for LeanUnigram {
    /// Reads a `"model"` section: `type` (absent or `"Unigram"`; anything else is refused by
    /// name), `vocab` as `[piece, score]` pairs, `unk_id`, `byte_fallback`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(ModelVisitor)
    }
}

struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = LeanUnigram;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Unigram model: {\"type\": \"Unigram\", \"unk_id\": .., \"vocab\": [[piece, score], ..]}")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<LeanUnigram, A::Error> {
        let mut vocab = None;
        let mut unk_id = None;
        let mut byte_fallback = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    let kind: String = map.next_value()?;
                    if kind != "Unigram" {
                        return Err(de::Error::custom(format!(
                            "model type {kind:?} is not supported: clipserve reads Unigram \
                             (SentencePiece) tokenizers only"
                        )));
                    }
                }
                "vocab" => {
                    let mut builder = Builder::default();
                    map.next_value_seed(VocabSeed(&mut builder))?;
                    vocab = Some(builder);
                }
                "unk_id" => unk_id = map.next_value()?,
                "byte_fallback" => byte_fallback = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let vocab = vocab.ok_or_else(|| de::Error::missing_field("vocab"))?;
        vocab
            .build(unk_id, byte_fallback)
            .map_err(|e| de::Error::custom(format!("Unable to load vocab: {e}")))
    }
}

/// Appends the `[[piece, score], ..]` list to a [`Builder`] as it is parsed.
struct VocabSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for VocabSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for VocabSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of [piece, score] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(PieceSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One `[piece, score]` pair, pushed to the [`Builder`] without an owned `String` where the
/// JSON text has no escapes.
struct PieceSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for PieceSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de> Visitor<'de> for PieceSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [piece, score] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let piece: std::borrow::Cow<'de, str> = seq
            .next_element::<BorrowedOrOwned<'de>>()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?
            .0;
        let score: f64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        self.0.push(&piece, score);
        Ok(())
    }
}

/// A string that borrows from the JSON text when it can.
struct BorrowedOrOwned<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for BorrowedOrOwned<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = BorrowedOrOwned<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a piece string")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedOrOwned(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedOrOwned(v.to_owned().into()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedOrOwned(v.into()))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}
