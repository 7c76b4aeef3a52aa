from pipeline_steps.cli import main

main()
