//! `wxgate demo` runs end to end: it checks at each step what the echo backend
//! received and fails otherwise.

#[test]
fn the_demo_walks_through_login_identity_and_phone() {
    wxgate::demo::run().expect("the demo completes");
}
