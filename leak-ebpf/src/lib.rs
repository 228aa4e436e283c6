#![no_std]
// Empty library target: lets leak-user name this package as a build-dependency, so cargo
// rebuilds leak-user when the BPF sources change (aya-build handles the binary itself).
