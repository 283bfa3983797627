use std::time::Instant;
fn run(m: usize, n: usize, k: usize, par: gemm::Parallelism, reps: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}
fn main() {
    let shapes = [
        (1024, 1024, 1024),
        (4064, 384, 128),
        (4064, 128, 384),
        (128, 384, 4064),
        (4064, 512, 128),
        (4064, 128, 512),
        (128, 512, 4064),
        (127, 127, 32),
        (127, 32, 127),
        (32, 127, 127),
    ];
    for (m, n, k) in shapes {
        let reps = if m * n * k > 10_000_000 { 20 } else { 2000 };
        let s = run(m, n, k, gemm::Parallelism::None, reps);
        let p = run(m, n, k, gemm::Parallelism::Rayon(0), reps);
        println!("{m}x{n}x{k}: 1 thread {s:.1} GFLOP/s, rayon {p:.1}");
    }
}
