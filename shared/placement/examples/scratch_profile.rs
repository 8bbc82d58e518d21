use elk_placement::{Partition, Worker, solve};
fn main() {
    let ids: Vec<String> = (0..500).map(|i| format!("worker-{i:05}")).collect();
    let workers: Vec<Worker<&str>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Worker::new(id.as_str(), 1 + (i % 4) as u32))
        .collect();
    let unassigned: Vec<Partition<&str>> = (0..5000u64).map(Partition::unassigned).collect();
    let balanced = solve(&workers, &unassigned)
        .unwrap()
        .to_partitions(&workers, &unassigned);
    let mut joined = workers.clone();
    joined.push(Worker::new("joiner", 2));
    let started = std::time::Instant::now();
    let mut moved = 0;
    for _ in 0..20000 {
        moved += std::hint::black_box(solve(&joined, &balanced).unwrap()).moved();
    }
    eprintln!("{:?} per solve, {moved}", started.elapsed() / 20000);
}
