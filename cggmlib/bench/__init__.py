"""Measuring speed and memory: the step timer (`runner`), its suites (`suites`), the released code's
step timed alike (`released`), classifier memory (`memory`) and the prepared GPU check (`gpu_check`)."""
