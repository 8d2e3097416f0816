//! The pickle opcodes, named once: the reader dispatches on them and every writer of pickles
//! (our `torch.save`, the tests' builders) spells its bytes with them.

/// Defines [`Op`] and its byte conversion from one table, so a name and its byte cannot drift.
macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $byte:literal,)*) => {
        /// A pickle opcode (protocols 0 to 5), as CPython's `pickletools` lists them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Op {
            $($(#[$doc])* $name = $byte,)*
        }

        impl TryFrom<u8> for Op {
            /// The byte, which is no opcode.
            type Error = u8;

            fn try_from(b: u8) -> Result<Op, u8> {
                match b {
                    $($byte => Ok(Op::$name),)*
                    other => Err(other),
                }
            }
        }
    };
}

opcodes! {
    /// Push the stack's length onto the mark stack.
    Mark = b'(',
    /// End of the program: the top of the stack is its value.
    Stop = b'.',
    /// Discard the top of the stack.
    Pop = b'0',
    /// Discard everything above the last mark.
    PopMark = b'1',
    /// Push the top of the stack again.
    Dup = b'2',
    /// Protocol 0: a float as a decimal line.
    Float = b'F',
    /// Protocol 0: an integer as a decimal line.
    Int = b'I',
    /// A signed 4-byte integer.
    BinInt = b'J',
    /// An unsigned 1-byte integer.
    BinInt1 = b'K',
    /// Protocol 0: a long as a decimal line.
    Long = b'L',
    /// An unsigned 2-byte integer.
    BinInt2 = b'M',
    /// `None`.
    None = b'N',
    /// Protocol 0: a persistent id as a line.
    PersId = b'P',
    /// A persistent id: the top of the stack.
    BinPersId = b'Q',
    /// Call the callable below the top with the argument tuple on top.
    Reduce = b'R',
    /// Protocol 0: a quoted string line.
    String = b'S',
    /// A Python 2 str of 4-byte signed length.
    BinString = b'T',
    /// A Python 2 str of 1-byte length.
    ShortBinString = b'U',
    /// Protocol 0: a raw-unicode-escaped line.
    Unicode = b'V',
    /// A UTF-8 string of 4-byte length.
    BinUnicode = b'X',
    /// Append the top of the stack to the list below it.
    Append = b'a',
    /// Set the state of the object below the top to the top.
    Build = b'b',
    /// A global: module and name as two lines.
    Global = b'c',
    /// A dict of the pairs above the last mark.
    Dict = b'd',
    /// An empty dict.
    EmptyDict = b'}',
    /// Append the values above the last mark to the list below it.
    Appends = b'e',
    /// Protocol 0: a memo read, its index a decimal line.
    Get = b'g',
    /// A memo read with a 1-byte index.
    BinGet = b'h',
    /// Protocol 0: build an instance of a class named by two lines.
    Inst = b'i',
    /// A memo read with a 4-byte index.
    LongBinGet = b'j',
    /// A list of the values above the last mark.
    List = b'l',
    /// An empty list.
    EmptyList = b']',
    /// Protocol 1: build an instance from the values above the last mark.
    Obj = b'o',
    /// Protocol 0: a memo write, its index a decimal line.
    Put = b'p',
    /// A memo write with a 1-byte index.
    BinPut = b'q',
    /// A memo write with a 4-byte index.
    LongBinPut = b'r',
    /// Set one key/value pair in the dict below them.
    SetItem = b's',
    /// A tuple of the values above the last mark.
    Tuple = b't',
    /// An empty tuple.
    EmptyTuple = b')',
    /// Set the pairs above the last mark in the dict below it.
    SetItems = b'u',
    /// A big-endian 8-byte float.
    BinFloat = b'G',
    /// Protocol 2: the protocol version, one byte.
    Proto = 0x80,
    /// `cls.__new__(cls, *args)`.
    NewObj = 0x81,
    /// An extension registry code of 1 byte.
    Ext1 = 0x82,
    /// An extension registry code of 2 bytes.
    Ext2 = 0x83,
    /// An extension registry code of 4 bytes.
    Ext4 = 0x84,
    /// A tuple of the top value.
    Tuple1 = 0x85,
    /// A tuple of the top two values.
    Tuple2 = 0x86,
    /// A tuple of the top three values.
    Tuple3 = 0x87,
    /// `True`.
    NewTrue = 0x88,
    /// `False`.
    NewFalse = 0x89,
    /// A little-endian two's-complement integer of 1-byte length.
    Long1 = 0x8a,
    /// A little-endian two's-complement integer of 4-byte length.
    Long4 = 0x8b,
    /// Protocol 3: bytes of 4-byte length.
    BinBytes = b'B',
    /// Protocol 3: bytes of 1-byte length.
    ShortBinBytes = b'C',
    /// Protocol 4: a UTF-8 string of 1-byte length.
    ShortBinUnicode = 0x8c,
    /// Protocol 4: a UTF-8 string of 8-byte length.
    BinUnicode8 = 0x8d,
    /// Protocol 4: bytes of 8-byte length.
    BinBytes8 = 0x8e,
    /// Protocol 4: an empty set.
    EmptySet = 0x8f,
    /// Protocol 4: add the values above the last mark to the set below it.
    AddItems = 0x90,
    /// Protocol 4: a frozenset of the values above the last mark.
    FrozenSet = 0x91,
    /// Protocol 4: `cls.__new__(cls, *args, **kwargs)`.
    NewObjEx = 0x92,
    /// Protocol 4: a global from two strings on the stack.
    StackGlobal = 0x93,
    /// Protocol 4: store the top of the stack at the memo's next index.
    Memoize = 0x94,
    /// Protocol 4: a framing hint, an 8-byte length.
    Frame = 0x95,
    /// Protocol 5: a bytearray of 8-byte length.
    ByteArray8 = 0x96,
    /// Protocol 5: an out-of-band buffer.
    NextBuffer = 0x97,
    /// Protocol 5: make the top buffer read-only.
    ReadOnlyBuffer = 0x98,
}

impl Op {
    /// The opcode's byte.
    pub const fn byte(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn every_byte_names_at_most_one_opcode_and_round_trips() {
        let mut known = 0;
        for b in 0..=u8::MAX {
            if let Ok(op) = Op::try_from(b) {
                assert_eq!(op.byte(), b, "{op:?}");
                known += 1;
            }
        }
        // pickletools lists 68 opcodes for protocols 0 to 5.
        assert_eq!(known, 68);
    }
}
