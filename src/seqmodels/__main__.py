from seqmodels.cli.train import main

main()
