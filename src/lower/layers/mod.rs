//! One file per family of layers: each adds the `Lowerer` methods that lower its layers,
//! which `Lowerer::layer` (in `walker`) dispatches to.

mod attention;
mod embedding;
mod feed_forward;
mod forecast;
mod linear;
mod memory;
mod norm;
mod positions;
mod recurrent;
mod retention;
mod spectral;
mod wave;
