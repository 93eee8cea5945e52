from kvarn_cli.cli import main

main()
