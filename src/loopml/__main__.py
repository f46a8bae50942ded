from loopml.cli.main import main

main()
