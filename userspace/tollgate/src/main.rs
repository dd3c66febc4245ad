fn main() { println!("{}", tollgate::EBPF_OBJECT.len()); }
