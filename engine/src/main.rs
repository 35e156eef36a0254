use mlx_rs::Array;
fn main() {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
    let b = mlx_rs::ops::matmul(&a, &a).unwrap();
    println!("{b:?}");
}
