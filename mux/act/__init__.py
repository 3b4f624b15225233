"""`xenmux act`: each domain's on_* action carried out at its shutdown, for the whole host.

One concern a module: `policy` (the TOML file), `decide` (which event gets which job),
`record` (the state dir: cursor and action journal), `execute` (carrying jobs out:
concurrency, retries, re-checks), `hooks` (running a command with a time bound),
`toolstack` (the interface, and finding one by name), `xl` (Xen's xl), `metrics`, and
`service` (the process). The sim's toolstack is mux.sim.act_toolstack. docs/act.md.
"""
