use multiprocess::spawn_process;

fn double(x: u64) -> u64 {
    x * 2
}

#[tokio::test]
async fn smoke() {
    let mut p = spawn_process(double, 21).unwrap();
    assert_eq!(p.join().await.unwrap(), 42);
}
