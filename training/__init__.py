"""xray-screen training: the classic fastai recipe as a command-line tool."""
