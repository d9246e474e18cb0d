// SPDX-License-Identifier: GPL-2.0
//! Little-endian byte codec of the shared-memory structs, and `wire_struct!`,
//! which declares each of those structs once.
//!
//! Like [`abi`](crate::abi) and [`pool`](crate::pool), this file is compiled
//! twice: by cargo into `vmdedup-protocol`, and by Kbuild into the guest module
//! (`#[path = "../protocol/src/wire.rs"] mod wire;` at the module's crate root,
//! so `$crate::wire` names it in both builds). It uses `core` only.
//!
//! Nothing here can panic: a primitive whose bytes lie (partly) outside the
//! buffer decodes as zero and encodes to nothing (a struct or array is coded
//! field by field). The generated codecs only ever use constant,
//! compile-time-checked offsets inside a buffer of the struct's size.

/// A value with a fixed little-endian encoding of [`Wire::SIZE`] bytes.
///
/// For every type in the ABI, `SIZE` equals `size_of::<Self>()` and the
/// encoding is the in-memory `#[repr(C)]` layout on a little-endian machine
/// (`wire_struct!` asserts the first and that the struct has no padding).
pub trait Wire: Sized {
    /// Size of the encoding in bytes.
    const SIZE: usize;
    /// Decodes the value at byte offset `o` of `b`. Never panics: a primitive
    /// that does not fit in `b` reads as zero.
    fn get(b: &[u8], o: usize) -> Self;
    /// Encodes the value at byte offset `o` of `b`. Never panics: a primitive
    /// that does not fit in `b` is not written.
    fn put(&self, b: &mut [u8], o: usize);
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const SIZE: usize = core::mem::size_of::<$t>();

            #[inline]
            fn get(b: &[u8], o: usize) -> Self {
                let mut a = [0u8; core::mem::size_of::<$t>()];
                if let Some(s) = b.get(o..o.saturating_add(a.len())) {
                    a.copy_from_slice(s);
                }
                <$t>::from_le_bytes(a)
            }

            #[inline]
            fn put(&self, b: &mut [u8], o: usize) {
                let a = self.to_le_bytes();
                if let Some(d) = b.get_mut(o..o.saturating_add(a.len())) {
                    d.copy_from_slice(&a);
                }
            }
        }
    )*};
}

wire_int!(u8, u16, u32, u64, i64);

impl<T: Wire, const N: usize> Wire for [T; N] {
    const SIZE: usize = T::SIZE * N;

    #[inline]
    fn get(b: &[u8], o: usize) -> Self {
        core::array::from_fn(|i| T::get(b, o.saturating_add(i.saturating_mul(T::SIZE))))
    }

    #[inline]
    fn put(&self, b: &mut [u8], o: usize) {
        for (i, v) in self.iter().enumerate() {
            v.put(b, o.saturating_add(i.saturating_mul(T::SIZE)));
        }
    }
}

/// Declares a shared-memory struct once.
///
/// From one declaration this generates:
/// - the `#[repr(C)]` struct with its documented fields (further attributes,
///   such as `#[repr(align(64))]` or derives, pass through);
/// - a module of byte-offset constants, one per field (plus any items given in
///   an `also { .. }` block after the struct);
/// - compile-time asserts: the struct's size, every field's offset, the codec
///   size of every field, and that the fields cover the struct without padding;
/// - [`Wire`] for the struct, and `from_le_bytes` / `to_le_bytes` over an array
///   of the struct's size.
///
/// ```text
/// wire_struct! {
///     /// Docs (say who writes it).
///     #[derive(Clone, Copy, Debug)]
///     pub struct Name: SIZE_IN_BYTES, offsets name_off {
///         /// Docs of the field (its writer, orderings).
///         pub field: u64 = FIELD @ 0,
///         ...
///     }
/// }
/// ```
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident: $size:expr, offsets $off:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident: $ty:ty = $konst:ident @ $at:literal,
            )*
        }
        $(also { $($extra:item)* })?
    ) => {
        $(#[$meta])*
        #[repr(C)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        #[doc = concat!("Byte offsets of the [`", stringify!($name), "`] fields, for code that ")]
        #[doc = "accesses shared memory through volatile or atomic loads instead of references."]
        pub mod $off {
            $(
                #[doc = concat!("Offset of [`super::", stringify!($name), "::", stringify!($field), "`].")]
                pub const $konst: usize = $at;
            )*
            $($($extra)*)?
        }

        const _: () = {
            assert!(core::mem::size_of::<$name>() == $size);
            $(
                assert!(core::mem::offset_of!($name, $field) == $off::$konst);
                assert!(<$ty as $crate::wire::Wire>::SIZE == core::mem::size_of::<$ty>());
            )*
            // No padding: every byte belongs to a field, so decoding any bytes
            // and encoding the result gives the same bytes back.
            assert!(0 $(+ core::mem::size_of::<$ty>())* == $size);
        };

        impl $crate::wire::Wire for $name {
            const SIZE: usize = $size;

            #[inline]
            fn get(b: &[u8], o: usize) -> Self {
                $name {
                    $($field: <$ty as $crate::wire::Wire>::get(b, o.saturating_add($off::$konst)),)*
                }
            }

            #[inline]
            fn put(&self, b: &mut [u8], o: usize) {
                $($crate::wire::Wire::put(&self.$field, b, o.saturating_add($off::$konst));)*
            }
        }

        impl $name {
            #[doc = concat!("Decodes a [`", stringify!($name), "`] from its little-endian bytes ")]
            #[doc = "(no validation)."]
            #[inline]
            pub fn from_le_bytes(b: &[u8; $size]) -> Self {
                <Self as $crate::wire::Wire>::get(b, 0)
            }

            #[doc = concat!("Encodes a [`", stringify!($name), "`] as its little-endian bytes.")]
            // By reference, like every caller holds it: some of these are 1 KiB.
            #[allow(clippy::wrong_self_convention)]
            #[inline]
            pub fn to_le_bytes(&self) -> [u8; $size] {
                let mut b = [0u8; $size];
                $crate::wire::Wire::put(self, &mut b, 0);
                b
            }
        }
    };
}
pub(crate) use wire_struct;
