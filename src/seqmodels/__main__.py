from seqmodels.train import main

main()
