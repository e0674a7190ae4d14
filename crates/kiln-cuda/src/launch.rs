//! Typed kernel launches: a device pointer knows what it points to, and each kernel takes a
//! struct of its named arguments, written by `build.rs` from the kernel's signature in
//! `kernels/*.cu` (so their order and types cannot drift apart). Launches still check the
//! argument sizes against what the driver reports (`CudaBackend::check_args`): a kernel
//! changed without a rebuild, or a type the build script maps wrongly, is an error, not a
//! launch.

use std::marker::PhantomData;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr};
use kiln_model::ModelError;

/// A device address of `T` values (f16 values are `u16`); null where a kernel takes an absent
/// buffer (no bias, no norm weights).
pub(crate) struct Dev<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Dev<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Dev<T> {}

impl<T> Dev<T> {
    /// No buffer.
    pub(crate) const NULL: Dev<T> = Dev::raw(0);

    const fn raw(addr: u64) -> Self {
        Dev {
            addr,
            _t: PhantomData,
        }
    }

    /// The start of `s`.
    pub(crate) fn of(s: &CudaSlice<T>, stream: &CudaStream) -> Self {
        Dev::raw(s.device_ptr(stream).0)
    }

    /// The start of `s`, or null.
    pub(crate) fn of_opt(s: Option<&CudaSlice<T>>, stream: &CudaStream) -> Self {
        s.map_or(Dev::NULL, |s| Dev::of(s, stream))
    }

    /// `elems` values further on.
    pub(crate) fn at(self, elems: usize) -> Self {
        Dev::raw(self.addr + (elems * std::mem::size_of::<T>()) as u64)
    }

    /// The same memory read as `U` values (a scratch buffer that holds f32 in one kernel and
    /// f16 in the next).
    pub(crate) fn cast<U>(self) -> Dev<U> {
        Dev::raw(self.addr)
    }

    pub(crate) fn is_null(self) -> bool {
        self.addr == 0
    }

    /// The address, for the driver and cuBLAS.
    pub(crate) fn addr(self) -> u64 {
        self.addr
    }
}

/// What the matrix-vector kernels do with `W x` (`enum Epi` in kernels/prelude.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Epilogue {
    /// `out = W x (+ bias)`.
    Store = 0,
    /// `out += W x (+ bias)` (the residual add).
    Accumulate = 1,
    /// `out = silu(W_gate x) * (W_up x)` over the two stacked halves of W.
    SwiGlu = 2,
}

/// A kernel argument as the driver takes it.
#[derive(Clone, Copy)]
pub(crate) enum A {
    P(u64),
    I(i32),
    L(i64),
    F(f32),
}

impl A {
    /// Bytes the argument takes.
    pub(crate) fn size(self) -> usize {
        match self {
            A::P(_) | A::L(_) => 8,
            A::I(_) | A::F(_) => 4,
        }
    }
}

/// Most arguments of a kernel launch (`launch_ex` keeps their pointers on the stack).
pub(crate) const MAX_ARGS: usize = 32;

/// A launch's arguments, on the stack.
pub(crate) struct ArgList {
    a: [A; MAX_ARGS],
    n: usize,
}

impl ArgList {
    pub(crate) fn new(args: &[A]) -> Self {
        assert!(
            args.len() <= MAX_ARGS,
            "a kernel with {} arguments",
            args.len()
        );
        let mut a = [A::I(0); MAX_ARGS];
        a[..args.len()].copy_from_slice(args);
        ArgList { a, n: args.len() }
    }

    pub(crate) fn as_slice(&self) -> &[A] {
        &self.a[..self.n]
    }
}

/// A kernel's named arguments (written by build.rs).
pub(crate) trait KernelArgs {
    fn args(&self) -> ArgList;
}

/// A loaded kernel that takes arguments `T`.
pub(crate) struct Kernel<T> {
    pub(crate) f: CudaFunction,
    pub(crate) name: &'static str,
    _t: PhantomData<fn(T)>,
}

impl<T> Kernel<T> {
    fn new(
        name: &'static str,
        f: impl Fn(&'static str) -> Result<CudaFunction, ModelError>,
    ) -> Result<Self, ModelError> {
        Ok(Kernel {
            f: f(name)?,
            name,
            _t: PhantomData,
        })
    }
}

include!(concat!(env!("OUT_DIR"), "/kernel_args.rs"));
