from pipeline_steps.cli import run

run()
