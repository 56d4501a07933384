use bt86_runtime::snippet::{run_snippet, Snippet};

#[test]
fn smoke() {
    // mov eax,5; add eax,3; push eax; pop ebx; inc ecx (0x41)
    let s = Snippet { code: vec![0xb8, 5, 0, 0, 0, 0x83, 0xc0, 3, 0x50, 0x5b, 0x41], ..Default::default() };
    let r = run_snippet(&s);
    println!("{r:?}");
}
